"""The report, from a finished run folder: `run_view` loads it once, `analyses` computes each figure
once (with `lab.accounting`), and the renderers write it out: `markdown` (report.md, with
`kv_markdown`), `html` (report.html), `plots` (PNG). `writer.write_report` does all of it; `compare`
sets several runs side by side; `capacity` writes a capacity run's capacity.md. Nothing here
imports torch or vllm."""
