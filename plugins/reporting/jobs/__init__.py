"""The reporting plugin's jobs: decoder training (a TrainingJob) and answering/editing with stored decoders."""
