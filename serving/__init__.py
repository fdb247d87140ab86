"""The Ray Serve application that hosts registered students."""
