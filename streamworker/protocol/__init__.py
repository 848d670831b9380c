"""The job protocol: everything the gateway and the workers must agree on.

A job is written to a Redis Stream by a client (the gateway), taken by a
consumer (a worker), and its tokens travel back on a pub/sub channel and in a
durable log. This package names every key (`keys`), every message on the wire
(`wire`), the job record (`record`), the vocabulary of how a job ends
(`outcomes`), the Lua scripts that move a job along and their one loader
(`scripts`, `lua/`), and the two sides' operations: `client` (enqueue, cancel,
read the record and the log, replay) and `consumer` (read, reclaim, start,
append, finish, requeue, refresh).

It holds no llama.cpp, no threads and no HTTP server, so either side can
import it without the other's weight; import-linter enforces that
(pyproject.toml).
"""
