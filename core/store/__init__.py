"""The vector store: the interface (`base`), the DeepLake backend (`deeplake_store`) and the
in-memory exact search it uses for small collections (`exact`)."""
