"""GPU memory and KV-cache usage from NVML, the model server, Ollama and DCGM, exported as `sentinel_gpu_*`.

`GpuMonitor` (in `monitor.py`) is the one part the server wires in; the other modules each read one
kind of source into a `Reading`.
"""
