"""Data files shipped inside fastconv, read by :func:`fastconv.data.load_digits`.

``digits.csv.gz``: the Optical Recognition of Handwritten Digits data set
(E. Alpaydin and C. Kaynak, 1998; UCI Machine Learning Repository,
https://doi.org/10.24432/C50P49), licensed under Creative Commons
Attribution 4.0 International (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/). This is the copy that
scikit-learn distributes (``sklearn/datasets/data/digits.csv.gz``, byte for
byte): the UCI test set of 1,797 images of 8x8 pixels, each pixel a count
0..16 of the "on" pixels in a 4x4 block of a 32x32 bitmap, from 13 writers.
One row per image: 64 pixel values in row-major order, then the digit 0..9.
No changes were made to the data.
"""
