"""One benchmark concern per module; each exposes `rows(bench, args) -> list[Row]`."""
