"""Launchers: how a `lab` command for a service (hf, vllm, collector) gets a process of its own.
`base.Launcher` is the interface; `native` and `docker` implement it; `choose` picks one from
`--runtime`. The container images and compose files have modules of their own (`images`,
`compose`, `docker_engine`), apart from launching."""
