"""Host glue for DiT adapters (FLUX.1 XLabs v1/v2, SD3.5-Large InstantX): block patches through the host's
`("double_block", i)` dit replace hooks, a guard wrapper keeping them beside foreign dit patches, and the model checks.
Apply IP-Adapter dispatches here for DiT adapters (`apply.apply_dit`)."""
