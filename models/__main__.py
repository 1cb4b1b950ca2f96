"""`python -m models`: the norm, option and family tables, from their declarations."""

import models

print(models.tables())
