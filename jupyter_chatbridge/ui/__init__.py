"""What people see: the chat view model, the ipywidgets panel and widget, the page's files."""
