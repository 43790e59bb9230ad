"""Generation actors: plain classes; `launch/` turns them into Ray actors."""
