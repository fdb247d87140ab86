"""The floor that the pipeline (tasks/, which writes artifacts) and the server (serving/, which
reads them) both stand on: where artifacts live (storage), what they are (typed records with the
JSON they are written as), the scaler, the registry reader, and the one function that loads a
forecaster's weights. It imports models/ and conf/, never tasks/, serving/ or flows/."""
