"""What a user takes away from a study: the studies table, exported configs, retrained
winners and their leaderboard, the HTML report, the dashboard, and the run's summary."""
