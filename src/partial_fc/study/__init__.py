"""Studies: several training runs that differ in one setting, compared in one table (`partial-fc study ...`)."""
