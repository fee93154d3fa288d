"""What a user takes away from a study: the studies table, exported configs, retrained
winners and their leaderboard, the HTML report, the dashboard, the run's summary, and the
trained models themselves (load and predict, evaluate, export to TorchScript or ONNX)."""
