"""isdaa: offline preference optimization with importance sampling against reward over-optimization.

Nothing happens at import time: submodules are imported where they are used.
"""

__version__ = "0.1.0"
