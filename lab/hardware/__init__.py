"""The machine: NVML started in one place (`nvml`), the device a run uses (`device`), the environment
every manifest records (`env`), and the collector beside each backend process (`collector`, its
`sources` and its `timeline` file)."""
