"""The one error type for bad input from people (configs, flags, workdirs).

train.py and eval.py turn it into one line on stderr and a non-zero exit, before anything is
written. Raise it with a message that names what is wrong and lists the valid choices.
"""


class ConfigError(ValueError):
  pass
