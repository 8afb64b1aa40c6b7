"""The contrastive plugin's jobs: pretraining (a TrainingJob) and the evaluation of a stored encoder."""
