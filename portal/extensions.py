"""Flask extensions, bound to the one shared metadata of common.db."""
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

import common.models  # noqa: F401  (registers every table on the metadata)
from common.db import Base

db = SQLAlchemy(metadata=Base.metadata)
migrate = Migrate()
