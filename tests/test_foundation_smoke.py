"""The schema loads on both databases and matches the Table objects."""

import sqlalchemy as sa

from cigri.db import schema
from tests.conftest import add_cluster


def test_schema_matches_tables(engine):
    insp = sa.inspect(engine)
    for table in schema.metadata.sorted_tables:
        cols = {c["name"] for c in insp.get_columns(table.name)}
        assert cols == {c.name for c in table.columns}, table.name


def test_null_parameter_and_cluster(engine):
    cid = add_cluster(engine)
    with engine.begin() as c:
        row = c.execute(sa.select(schema.parameters).where(schema.parameters.c.id == 0)).one()
        assert row.name == "null"
        assert c.execute(sa.select(schema.clusters.c.name).where(schema.clusters.c.id == cid)).scalar() == "c1"
