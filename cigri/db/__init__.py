"""The only place with SQL. Modules here take a SQLAlchemy Connection and use
Core expressions or text() with bound parameters; callers own the transaction."""
