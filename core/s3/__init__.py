"""S3: the client connection (`client`), the bucket's health watch (`health`) and the URLs of
result images (`locator`)."""
