"""Model engines, rubrics and parsing for the judge stages (see issue: Judges)."""
