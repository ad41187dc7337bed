"""The command line: `backendai` (main), the API client it and scripts use, and the launcher behind `up`."""
