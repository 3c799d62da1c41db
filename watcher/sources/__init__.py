"""Where watches come from besides the API: the declarative watch-list file (`watchlist`)."""
