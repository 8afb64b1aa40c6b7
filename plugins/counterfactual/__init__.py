"""The counterfactual plugin (imported as `workbench_plugins.counterfactual`)."""
