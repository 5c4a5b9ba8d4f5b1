"""Model cards and pushing checkpoints to the Hugging Face Hub."""
