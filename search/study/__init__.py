"""The study: where results live. Storage URLs and the retrying storage, the one schema of
every key stored on a study or trial, the driver lease, reading trials back, and the notes
optuna-dashboard shows. Nothing here trains or talks to Ray."""
