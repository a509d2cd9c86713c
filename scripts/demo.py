"""Open napari with a sample image and the Segment Anything annotator (see napari_sam._napari.demo)."""

from napari_sam._napari.demo import main

if __name__ == "__main__":
    main()
