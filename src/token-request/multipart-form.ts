/** A parsed multipart body, by field name, keeping repeats so that validation can refuse them. */
export interface MultipartForm {
  fields: Map<string, string[]>;
  files: Map<string, Buffer[]>;
}
