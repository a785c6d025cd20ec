"""The verifying client for people who install packages (``chronicle verify``, issue 13).

- :mod:`~chronicle.verify.statedir`: the state directory (pinned keys, mirrors, policy;
  the synced chain position and release state, review items, evidence)
- :mod:`~chronicle.verify.sync`: incremental sync, verified like an audit, judged by the
  gate's own pure rules (:mod:`chronicle.release.state`), quorum over mirrors
- :mod:`~chronicle.verify.check`: a package version, an archive, a git checkout or a
  ``composer.lock`` against the synced state and the policy
- :mod:`~chronicle.verify.faults`: the fault classes and their exit codes
- :mod:`~chronicle.verify.db`: the release state as SQLite rows, judged by the gate's
  pure :func:`~chronicle.release.state.judge`
"""
