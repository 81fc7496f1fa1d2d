"""Thin Spark glue: sessions, schemas and the functions run inside ``mapInPandas``."""
