"""Placeholder for the end-to-end demo (issue 6 fills it in)."""

import lab_common

print("lab_common", lab_common.__version__, "on", lab_common.machine_description())
