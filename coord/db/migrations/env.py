"""Alembic environment: the Database object comes from coord.db.migrate, never from an ini file."""

from alembic import context

from coord.db.models import Base

db = context.config.attributes.get("db")
target_metadata = Base.metadata

if db is None:  # offline/autogenerate use outside coord: nothing to connect to
    context.configure(url="sqlite://", target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with db.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
