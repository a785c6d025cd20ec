"""Replication, cross-signing and attestation (protocol.md "Replication, cross-signing,
attestation"; docs/replication.md).

- ``follower.py``: copy an upstream Chronicle into a replica chain, verifying every answer
  and every entry before storing it; detect forks and split views, keep the evidence.
- ``crosssign.py``: publish our head on peer Chronicles, by policy, in the background.
- ``attest.py``: the scheduled attestation of replicated heads onto our own chain.
- ``witnessing.py``: have our tree's checkpoints cosigned by tlog witnesses, K of N.
- ``jobs.py``: the background loops of ``chronicle serve``, under a leader lock.
- ``commands.py``: the ``chronicle replica`` and ``chronicle cross-sign`` commands.
"""
