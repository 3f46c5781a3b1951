"""KV-cache accounting: pure formulas (`kv`), where the memory went in a run (`breakdown`), the decode
phase's memory traffic (`bandwidth`), and how many requests fit one budget (`capacity`). No engine,
no file: typed records in, numbers out."""
