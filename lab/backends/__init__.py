"""Backends: one small interface (`base.Backend`), one module per engine (`hf`, `vllm`), and the
`registry` that names which class runs each backend/mode. Importing this package or `base` imports
no engine; `registry` imports an engine module only when its backend/mode runs."""
