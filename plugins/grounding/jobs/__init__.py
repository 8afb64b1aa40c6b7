"""The grounding plugin's jobs: the supervised head's training (a TrainingJob), evaluation and one-image grounding."""
