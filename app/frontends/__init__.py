"""Front ends over a Session: headless lines (here) and the console (app.ui)."""
