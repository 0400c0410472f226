<%--
  Redirect: ?code=N (default 302) with Location exactly ?to=URL (default /echo/info.jsp),
  set verbatim (no absolutisation). Small text body.
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    int code = (int) longParam(request, "code", 302);
    String to = request.getParameter("to");
    if (to == null) {
        to = "/echo/info.jsp";
    }
    response.setStatus(code);
    response.setHeader("Location", to);
    byte[] b = ("redirect to " + to + "\n").getBytes(java.nio.charset.StandardCharsets.UTF_8);
    response.setContentType("text/plain;charset=UTF-8");
    response.setContentLength(b.length);
    response.getOutputStream().write(b);
%>
