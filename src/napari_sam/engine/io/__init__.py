"""Reading images of every backing and creating label outputs."""
