"""The counterfactual plugin's jobs: classifier and CAE training (TrainingJobs), classifier evaluation, explanations."""
