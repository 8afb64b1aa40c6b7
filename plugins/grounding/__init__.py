"""The grounding plugin (imported as `workbench_plugins.grounding`)."""
