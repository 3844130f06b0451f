"""The jobnest controller: a gRPC server over a job store, a scheduler and executors.

Run it with `jobnest controller` or `python -m jobnest_controller`; the SDK starts a local one
on demand. The SDK never imports this package.
"""
