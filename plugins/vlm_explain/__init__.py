"""The vision-language explanation plugin (imported as `workbench_plugins.vlm_explain`)."""
