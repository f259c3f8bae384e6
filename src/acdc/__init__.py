"""acdc-train."""
