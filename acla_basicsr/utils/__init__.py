from .options import OptionError, check_options

__all__ = ['OptionError', 'check_options']
