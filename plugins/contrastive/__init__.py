"""Report-paired contrastive pretraining (CLIP, SigLIP, ConVIRT, FLAIR, COSMOS) on open_clip."""
