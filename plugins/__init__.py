"""First-party workbench plugins, imported as ``workbench_plugins``."""
