"""Ground-floor toolkit every entry point uses: the strict command line and the exit-2 wrapper (:mod:`toolkit.cli`).

It imports nothing from the project, so any floor (schemas, pose, trainer, components, pipeline) may use it;
see ``docs/architecture.md``.
"""
