"""The composition root: the command line, the dev stack, the local supervisor and the demo.

It imports every service and the library; nothing but tests and benchmarks imports it.
"""
