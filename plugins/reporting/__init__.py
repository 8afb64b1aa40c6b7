"""The reporting plugin (imported as `workbench_plugins.reporting`): answer-and-explain generation and report editing."""
