"""The bundled dataset meta files (data only: ``<name>.yaml``, loaded by :mod:`schemas.dataset_meta`)."""
